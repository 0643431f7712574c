"""Tumour-model labels from nuclei types and colour (src_models/data/masks_from_nuclei.py): the rules on
small synthetic scenes, the held-out split, determinism, and the command on the real copies in
data/more_he."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src_models.data.masks_from_nuclei as M

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "more_he"

WHITE = (245, 245, 245)
PINK = (232, 150, 200)        # eosin: stained, haematoxylin ~0
CYTOPLASM = (200, 140, 190)   # between tumour nuclei
NUCLEUS = (70, 40, 130)       # haematoxylin-dense


class Scene:
    """A synthetic H&E tile at 1 µm/px and its nuclei type raster."""

    def __init__(self, size=240, fill=PINK):
        self.rgb = np.empty((size, size, 3), np.uint8)
        self.rgb[:] = fill
        self.types = np.zeros((size, size), np.int32)
        self.yy, self.xx = np.mgrid[:size, :size]

    def nucleus(self, y, x, r, t, label=True, ry=None):
        ry = r if ry is None else ry
        disk = ((self.yy - y) / ry) ** 2 + ((self.xx - x) / r) ** 2 <= 1
        self.rgb[disk] = NUCLEUS
        if label:
            self.types[disk] = t

    def grid(self, y0, y1, x0, x1, spacing, r, t, label=True, background=None):
        if background is not None:
            self.rgb[y0:y1, x0:x1] = background
        for y in range(y0 + spacing // 2, y1, spacing):
            for x in range(x0 + spacing // 2, x1, spacing):
                self.nucleus(y, x, r, t, label)

    def labels(self, **kw):
        return M.derive_labels(self.rgb, self.types, pixel_um=1.0, **kw)


def test_dense_neoplastic_nuclei_make_a_tumour_nest_with_the_cytoplasm_between_them():
    s = Scene()
    s.grid(60, 180, 60, 180, 16, 6, M.NEOPLASTIC, background=CYTOPLASM)  # 113 µm² nuclei, 16 µm apart
    lab = s.labels()
    nest = lab[70:170, 70:170]
    assert (nest == M.TUMOUR).mean() > 0.98
    # the cytoplasm half-way between two nuclei (and between four) is tumour too
    assert lab[68, 76] == M.TUMOUR and lab[76, 76] == M.TUMOUR and lab[68, 68] == M.TUMOUR
    assert (lab[s.types == M.NEOPLASTIC] == M.TUMOUR).all()


def test_sparse_neoplastic_nuclei_are_not_a_nest():
    s = Scene()
    s.grid(0, 240, 0, 240, 40, 6, M.CONNECTIVE, label=True)  # stroma around
    s.nucleus(120, 120, 6, M.NEOPLASTIC)                    # one atypical cell alone
    assert (s.labels() == M.TUMOUR).sum() == 0


def test_dense_inflammatory_nuclei_make_an_infiltrate():
    s = Scene()
    s.grid(0, 240, 0, 240, 40, 2, M.CONNECTIVE)                # sparse stroma around it
    s.rgb[50:190, 50:190] = PINK
    s.types[50:190, 50:190] = 0
    s.grid(50, 190, 50, 190, 9, 3.5, M.INFLAMMATORY)          # lymphocytes 7 µm across, 9 µm apart
    lab = s.labels()
    assert (lab[60:180, 60:180] == M.INFILTRATE).mean() > 0.98
    assert (lab == M.TUMOUR).sum() == 0


def test_sparse_connective_nuclei_in_eosin_make_stroma_and_white_is_background():
    s = Scene()
    s.rgb[:, :80] = WHITE
    for k, y in enumerate(range(10, 240, 28)):
        for x in range(95 + 9 * (k % 2), 240, 30):
            s.nucleus(y, x, 1.8, M.CONNECTIVE, ry=6)  # spindles, ~30 µm apart
    lab = s.labels()
    assert (lab[:, :70] == M.BACKGROUND).all()
    assert (lab[:, 90:] == M.STROMA).mean() > 0.97
    assert (lab[:, 90:] == M.UNKNOWN).sum() == 0


def test_tissue_without_labelled_nuclei_is_unknown():
    # (a) nuclei in the image that the segmenter missed: their type cannot be told
    s = Scene()
    s.grid(0, 240, 0, 240, 12, 4, M.INFLAMMATORY, label=False)
    assert (s.labels() == M.UNKNOWN).mean() > 0.98
    # (b) stained tissue with no nucleus at all, labelled or not: no evidence for any class
    s = Scene()
    assert (s.labels() == M.UNKNOWN).mean() > 0.98
    # and the same tissue with the nuclei labelled is no longer unknown
    s = Scene()
    s.grid(0, 240, 0, 240, 12, 4, M.INFLAMMATORY, label=True)
    assert (s.labels() == M.INFILTRATE).mean() > 0.98


def test_interleaved_neoplastic_and_inflammatory_nuclei_are_mixed_hence_unknown():
    s = Scene(size=300)
    s.grid(0, 300, 0, 300, 16, 6, M.NEOPLASTIC, background=CYTOPLASM)
    for y in range(0, 300, 16):
        for x in range(0, 300, 16):  # two lymphocytes in every gap
            s.nucleus(y + 2, x + 2, 3.5, M.INFLAMMATORY)
            s.nucleus(y + 2, x + 10, 3.5, M.INFLAMMATORY)
    maps = {}
    lab = s.labels(maps=maps)
    inner = (slice(60, 240), slice(60, 240))
    assert (maps["neo"][inner] >= M.RULES["neoplastic_min"]).all() and (maps["inf"][inner] >= M.RULES["inflammatory_min"]).all()
    assert (lab[inner] == M.UNKNOWN).mean() > 0.98


def test_small_islands_and_holes_go_to_the_surrounding_class():
    raw = np.full((200, 200), M.INFILTRATE, np.uint8)
    raw[20:45, 20:45] = M.TUMOUR        # 625 µm² island: below 1,500 µm², absorbed
    raw[100:160, 100:160] = M.TUMOUR    # 3,600 µm² island: stays
    raw[120:140, 120:140] = M.STROMA    # 400 µm² hole in it: closed
    raw[:, 190:] = M.BACKGROUND         # background is rule 1's alone: never changed
    tissue = raw != M.BACKGROUND
    out = M.smooth_labels(raw, tissue, pixel_um=1.0)
    assert (out[20:45, 20:45] == M.INFILTRATE).all()
    assert (out[105:155, 105:155] == M.TUMOUR).all()
    assert ((out == M.BACKGROUND) == ~tissue).all()
    # at 0.5 µm/px the same pixels are a quarter of the area: the big island is now small too
    out = M.smooth_labels(raw, tissue, pixel_um=0.5)
    assert (out[tissue] == M.INFILTRATE).all()


def test_a_nest_is_tumour_up_to_the_cytoplasm_between_distant_nuclei():
    s = Scene(size=300)
    s.grid(10, 290, 10, 290, 28, 6, M.NEOPLASTIC, background=CYTOPLASM)  # 1,280 nuclei per mm², 14 % of the area
    lab = s.labels()
    assert (lab[60:240, 60:240] == M.TUMOUR).all()  # the gaps' centres, 20 µm from the nearest nucleus centre, too


def test_borders_are_smooth_at_annotation_scale():
    raw = np.full((120, 120), M.STROMA, np.uint8)
    raw[:, :60] = M.TUMOUR
    for y in range(0, 120, 4):  # a comb of 2 µm teeth along the border
        raw[y : y + 2, 60:64] = M.TUMOUR
        raw[y + 2 : y + 4, 56:60] = M.STROMA
    out = M.smooth_labels(raw, np.ones(raw.shape, bool), pixel_um=1.0)
    columns = [int(np.argmax(row != M.TUMOUR)) for row in out[10:110]]
    assert max(columns) - min(columns) <= 1 and 58 <= min(columns) <= 62


def test_missed_nuclei_among_a_few_labelled_ones_are_unknown():
    s = Scene()
    s.grid(0, 240, 0, 240, 12, 4, M.INFLAMMATORY, label=False)  # nuclei the segmenter missed
    for y in range(20, 240, 40):
        for x in range(20, 240, 40):
            s.nucleus(y, x, 1.8, M.CONNECTIVE, ry=6)              # and a few it found
    maps = {}
    lab = s.labels(maps=maps)
    assert (maps["labelled"][40:200, 40:200] >= M.RULES["labelled_min"]).all()  # not the 'no evidence' rule
    assert (lab[40:200, 40:200] == M.UNKNOWN).all()


def test_sizes_scale_with_the_pixel_size():
    # the same scene drawn at 0.5 µm/px (twice the pixels) gives the same labels, upsampled
    s1 = Scene(size=200)
    s1.rgb[:, :60] = WHITE
    s1.grid(40, 160, 80, 200, 16, 6, M.NEOPLASTIC, background=CYTOPLASM)
    lab1 = M.derive_labels(s1.rgb, s1.types, pixel_um=1.0)
    rgb2 = s1.rgb.repeat(2, 0).repeat(2, 1)
    types2 = s1.types.repeat(2, 0).repeat(2, 1)
    lab2 = M.derive_labels(rgb2, types2, pixel_um=0.5)
    assert (lab2[::2, ::2] == lab1).mean() > 0.98
    # ...but read as 1 µm/px the nest is only half as big in µm and its nuclei a quarter: no longer a
    # clean nest with the same outline
    lab3 = M.derive_labels(rgb2, types2, pixel_um=1.0)
    assert (lab3[::2, ::2] == lab1).mean() < (lab2[::2, ::2] == lab1).mean()


def test_layout_cells_follow_the_trainers_one_hot_convention():
    from src_models.models.native.mask_model import codes_to_rgb

    labels = np.full((64, 96), M.STROMA, np.uint8)
    labels[:32, :32] = M.TUMOUR
    labels[32:, 64:] = M.INFILTRATE
    labels[:16, 80:] = M.BACKGROUND
    labels[32:, :16] = M.UNKNOWN      # two whole cells: filled from the nearest known cell
    labels[0:9, 32:48] = M.UNKNOWN    # over half of a stroma cell: the known pixels still decide
    cells, filled = M.layout_labels(labels, 16)
    assert cells.shape == (4, 6) and filled == 2
    assert cells[0, 0] == M.TUMOUR and cells[0, 2] == M.STROMA and cells[0, 5] == M.BACKGROUND
    assert cells[3, 0] == M.STROMA and cells[3, 5] == M.INFILTRATE
    rgb = M.layout_rgb(cells)
    assert rgb.tobytes() == codes_to_rgb(cells, M.LAYOUT_CLASSES).tobytes()
    assert (rgb[0, 5] == 0).all() and tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[3, 5]) == (0, 0, 255)


# ---------------------------------------------------------------- the split and determinism


def _synthetic_sources(folder: Path, seed: int = 0, scramble_heldout: bool = False):
    """Two small labelled images and one unlabelled, in the layout of data/more_he."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for k, (h, w, labelled) in enumerate([(300, 260, True), (330, 300, True), (180, 200, False)]):
        s = Scene(size=max(h, w))
        s.grid(20, 200, 20, 200, 16, 6, M.NEOPLASTIC, background=CYTOPLASM)
        s.grid(200, 330, 0, 300, 9, 3.5, M.INFLAMMATORY)
        s.rgb[:, 230:] = WHITE
        s.types[:, 230:] = 0
        rgb, types = s.rgb[:h, :w].copy(), s.types[:h, :w].copy()
        cut = M.heldout_from_row(h)
        if scramble_heldout:
            rgb[cut:] = rng.integers(0, 256, rgb[cut:].shape, dtype=np.uint8)
            types[cut:] = rng.integers(0, 4, types[cut:].shape)
        Image.fromarray(rgb).save(folder / f"img{k}.png")
        entry = {"name": f"img{k}", "image": f"img{k}.png", "types": None, "heldout_from_row": cut}
        if labelled:
            np.savez_compressed(folder / f"img{k}_types.npz", nuc_raster=types)
            entry["types"] = f"img{k}_types.npz"
        sources.append(entry)
    return sources


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_no_heldout_row_reaches_the_training_folder(tmp_path):
    src = _synthetic_sources(tmp_path / "data")
    M.build(tmp_path / "data", tmp_path / "a", pixel_um=1.0, tile=64, layout_scale=8, sources=src)
    cuts = {e["name"]: e["heldout_from_row"] for e in src}
    names = sorted(p.name for p in (tmp_path / "a" / "train" / "images").iterdir())
    assert names
    for name in names:
        stem, y, x = name[:-4].rsplit("_", 2)
        assert int(y[1:]) + 64 <= cuts[stem], name
    for name in (tmp_path / "a" / "heldout" / "images").iterdir():
        stem, y, x = name.stem.rsplit("_", 2)
        assert int(y[1:]) >= cuts[stem], name
    # the training and layout outputs do not change when every held-out pixel and type is replaced
    src2 = _synthetic_sources(tmp_path / "data2", scramble_heldout=True)
    M.build(tmp_path / "data2", tmp_path / "b", pixel_um=1.0, tile=64, layout_scale=8, sources=src2)
    for sub in ("train", "layout"):
        assert _files(tmp_path / "a" / sub) == _files(tmp_path / "b" / sub), sub
    assert _files(tmp_path / "a" / "heldout") != _files(tmp_path / "b" / "heldout")


def test_two_runs_are_byte_identical(tmp_path):
    src = _synthetic_sources(tmp_path / "data")
    s1 = M.build(tmp_path / "data", tmp_path / "a", pixel_um=1.0, tile=64, layout_scale=8, sources=src)
    s2 = M.build(tmp_path / "data", tmp_path / "b", pixel_um=1.0, tile=64, layout_scale=8, sources=src)
    assert s1 == s2
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) > 20
    with pytest.raises(FileExistsError):  # never mixes a new run into an old one
        M.build(tmp_path / "data", tmp_path / "a", pixel_um=1.0, tile=64, layout_scale=8, sources=src)


# ---------------------------------------------------------------- the command on the real copies


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tumour_data")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = M.main(["--data", str(DATA), "--out", str(out)])
    assert rc == 0
    return out, json.loads(buf.getvalue())


def test_the_data_copies_ship_with_their_licences():
    for src in M.SOURCES:
        assert (DATA / src["image"]).is_file()
        if src["types"]:
            assert (DATA / src["types"]).is_file()
            assert (DATA / src["types"].replace("type_mask", "inst_mask")).is_file()
    for name in ("LICENSE-histolytics.txt", "LICENSE-tiatoolbox.txt", "README.md"):
        assert (DATA / name).is_file()
    assert "BSD 3-Clause" in (DATA / "LICENSE-histolytics.txt").read_text()


def test_the_command_on_the_real_images(real_run):
    out, summary = real_run
    cuts = {src["name"]: src["heldout_from_row"] for src in M.SOURCES}
    assert cuts == {"hgsc_nest": 1000, "hgsc_stromal": 1000, "tia_target": 667}
    assert summary["train"]["tiles"] == 60 and summary["heldout"]["tiles"] == 32
    assert summary["train"]["labelled"] + summary["train"]["unlabelled"] == 60
    # the tiatoolbox image has no types: all its tiles train (and are held out) without masks
    assert summary["sources"]["tia_target"]["train"]["labelled"] == 0
    assert not list((out / "train" / "masks").glob("tia_target_*"))
    assert not list((out / "heldout" / "masks").glob("tia_target_*"))
    # every class is present in the training labels; the nest is mostly tumour, stroma and infiltrate
    nest = summary["sources"]["hgsc_nest"]["train"]["class_fractions"]
    assert nest["tumour"] > 0.2 and nest["stroma"] > 0.2 and nest["infiltrate"] > 0.15
    assert 0 < nest["background"] < 0.05 and nest["unknown"] < 0.1
    assert summary["sources"]["hgsc_stromal"]["train"]["class_fractions"]["stroma"] > 0.9
    for split in ("train", "heldout"):
        for name in (out / split / "images").iterdir():
            stem, y, _ = name.stem.rsplit("_", 2)
            assert (int(y[1:]) + 256 <= cuts[stem]) if split == "train" else (int(y[1:]) >= cuts[stem]), name
        info = json.loads((out / split / "classes.json").read_text())
        assert info == {"classes": M.CLASSES, "colours": M.COLOURS}
    # masks: single-channel uint8 labels of their tile's size
    for mask in (out / "train" / "masks").iterdir():
        with Image.open(mask) as m, Image.open(out / "train" / "images" / mask.name) as im:
            assert m.mode == "L" and m.size == im.size == (256, 256)
            assert np.asarray(m).max() <= 4


def test_the_trainer_reads_the_folders(real_run):
    from src_models.training.train import load_training_set

    out, summary = real_run
    train = load_training_set(out / "train")
    assert train.classes == M.CLASSES and len(train.tiles) == summary["train"]["tiles"]
    assert sum(t.mask is not None for t in train.tiles) == summary["train"]["labelled"]
    held = load_training_set(out / "heldout")
    assert len(held.tiles) == summary["heldout"]["tiles"]
    layout = load_training_set(out / "layout")  # as the layout model reads it: images only, class 0
    assert len(layout.tiles) == 2 and all(t.mask is None for t in layout.tiles)
    for t in layout.tiles:
        assert t.image.shape == (62, 93, 3)
        assert set(np.unique(t.image)) <= {0, 255}
        assert (t.image.astype(int).sum(-1) <= 255).all()  # at most one channel on
